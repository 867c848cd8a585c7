from chinchilla.cli import main

main()
