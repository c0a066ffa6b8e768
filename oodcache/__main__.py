from oodcache.cli import main

raise SystemExit(main())
