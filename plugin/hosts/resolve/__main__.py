"""``python -m magic141.plugin.hosts.resolve edit|install``: what Resolve's script calls."""

import sys

from magic141.plugin.hosts.resolve.bridge import main

sys.exit(main())
