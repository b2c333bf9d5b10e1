"""`ssmoe report`: read training runs from MLflow, summarise them over seeds and test the paper's claims.

query (MLflow) -> stats (pure: groups, CIs, the two blanks) -> render (tables) and plots (PNG); cli ties them.
"""
