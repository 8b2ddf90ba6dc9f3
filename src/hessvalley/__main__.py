import sys

from hessvalley.cli import main

sys.exit(main())
