from hinotori.cli.entry import main

main()
