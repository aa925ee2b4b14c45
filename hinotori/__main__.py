from hinotori.cli.app import main

main()
