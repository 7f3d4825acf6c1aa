"""Future Lens: see what each hidden state of a language model anticipates, several tokens ahead."""

__version__ = "0.1.0"
