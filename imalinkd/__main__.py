from imalinkd.cli import main

raise SystemExit(main())
