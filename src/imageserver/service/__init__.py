"""The service tier: request parsing, session checks, Unix identities, jobs and processes."""
