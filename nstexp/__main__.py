from nstexp.cli import main

main()
