from vx6.cli import main

raise SystemExit(main())
