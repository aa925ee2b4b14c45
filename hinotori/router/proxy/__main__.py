from hinotori.router.proxy.worker import main

main()
