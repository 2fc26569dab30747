from services.provisioner.app import main

main()
