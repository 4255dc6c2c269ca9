from rps.run import main

main()
