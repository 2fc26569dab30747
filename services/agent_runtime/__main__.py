from services.agent_runtime.app import main

main()
