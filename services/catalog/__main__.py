from services.catalog.app import main

main()
