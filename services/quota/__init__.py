"""quota: admission decisions with reasons (policies-as-code arrive with the jobs issue)."""
