"""Config: the typed schema and its start-up rules, the option sets, the OmegaConf resolvers."""
