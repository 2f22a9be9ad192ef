from anobench.cli import main

main()
