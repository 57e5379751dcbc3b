from saekit.cli import main

main()
