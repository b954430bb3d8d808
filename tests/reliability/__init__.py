"""The reliability and security suite: one module per guarantee (see README, "Guarantees")."""
