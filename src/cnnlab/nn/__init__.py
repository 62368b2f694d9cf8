"""Building blocks from scratch: the convolution and pooling operators (d2l §7.2-7.5), layers, batch norm,
the book's Classifier contract and model summaries. Depends on torch only."""
