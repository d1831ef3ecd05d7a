from magic141.cli import main

raise SystemExit(main())
