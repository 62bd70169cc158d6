from chemtag.cli import main

raise SystemExit(main())
