from services.observability_collector.app import main

main()
