from services.cost_ledger.app import main

main()
