"""Reports: report.json, the files people and CI systems read, gates and budgets, merging, the CI matrix."""
