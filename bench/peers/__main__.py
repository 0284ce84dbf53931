from rnnserve.bench.peers.run import main

raise SystemExit(main())
