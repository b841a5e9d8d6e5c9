from ops.soak.run import main

raise SystemExit(main())
