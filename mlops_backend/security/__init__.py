"""Who may do what: keys, scopes and the routes they open, model allow-lists, limits and slots."""
