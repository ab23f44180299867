package suit
