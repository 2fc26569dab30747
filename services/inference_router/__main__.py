from services.inference_router.app import main

main()
