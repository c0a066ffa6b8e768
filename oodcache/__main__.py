from oodcache.cli import entry

entry()
