from omnijobs.cli import main

main()
