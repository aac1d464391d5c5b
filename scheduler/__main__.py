import sys

from .stopping import note_sigterm

note_sigterm()  # before the imports, which take a while: a SIGTERM meanwhile stops the replica cleanly

from .cli import main  # noqa: E402

sys.exit(main())
