"""RuleConfig and its versions arrive with the rules issue; the app is registered now so its
place in the layout (and in import contracts) is fixed from the start."""
