"""Pure core of shoal: models, the state machine, protocol messages and errors. No I/O here."""
