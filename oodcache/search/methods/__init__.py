"""One module per method; the module name is the registry key (see ``oodcache.search.base``)."""
