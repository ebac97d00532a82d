"""Phase 2 and 3 of the deployment checklist: component rollouts (logger ... type system)."""
