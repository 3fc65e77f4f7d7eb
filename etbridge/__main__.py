from etbridge.cli import main

raise SystemExit(main())
