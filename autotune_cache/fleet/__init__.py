"""Past one machine: a model x TP x GPU-type matrix (`matrix`, pure) built as Ray tasks (`ray_runner`), each
running one build on its node and publishing it to a registry (`job`), summed up per row (`report`)."""
