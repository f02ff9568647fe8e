from vx6.app.cli import main

raise SystemExit(main())
