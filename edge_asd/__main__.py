from edge_asd.cli import main

main()
