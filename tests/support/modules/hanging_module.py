"""Never finishes (a module stuck on a GPU or a lock); the node's timeout must end it."""

import time

time.sleep(3600)
