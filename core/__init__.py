"""The ground floor: errors, the input contract, artifact and runner types, parity metrics and gates, the
manifest, child processes. Imports nothing else of mobile-export; every other floor stands on it."""
