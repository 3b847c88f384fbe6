"""`python -m etl.fake_api`: serve the fake API, or steer one that runs (`--help`)."""

from etl.fake_api.cli import main

raise SystemExit(main())
