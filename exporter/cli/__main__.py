"""`python -m exporter.cli ...`: the mobile-export command."""
from exporter.cli import main

main()
