from triptych.cli.main import main

raise SystemExit(main())
