"""edge-asd trainer (desktop): datasets, protocols, models, int8 export, evaluation."""
