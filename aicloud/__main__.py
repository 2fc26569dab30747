from aicloud.cli import main

main()
