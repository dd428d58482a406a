"""mllint's own codes (9xx): suppression hygiene and problems reading or parsing a file."""
