"""Evaluation of a trained model on the test split, and the gate that accepts or rejects it."""

# The gate's two decisions, recorded in every version's manifest (the registry reads them without the evaluation
# code, which imports torch).
ACCEPTED = "accepted"
REJECTED = "rejected"
